"""Rate limits for what a stranger can do many times over: ask for visitor tokens, rate
candidates, try passwords. In memory (a restart forgets them), thread-safe, bounded in size.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Callable


class Throttle:
    """At most `limit` events per key in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.max_keys, self.clock = int(limit), float(window_s), max_keys, clock
        self._events: "OrderedDict[str, deque[float]]" = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        self._events.move_to_end(key)
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def allow(self, key: str) -> bool:
        """Count one event for `key` if it is within the limit; False (and nothing counted) if not."""
        with self._lock:
            now = self.clock()
            q = self._recent(key, now)
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may act again (0 if it may now)."""
        with self._lock:
            now = self.clock()
            q = self._recent(key, now)
            return 0.0 if len(q) < self.limit else max(0.0, self.window_s - (now - q[0]))


class DistinctLimit:
    """At most `limit` distinct values per key (e.g. rater ids per client address and loop)."""

    def __init__(self, limit: int, *, max_keys: int = 10_000):
        self.limit, self.max_keys = int(limit), max_keys
        self._seen: "OrderedDict[str, set[str]]" = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, value: str) -> bool:
        with self._lock:
            seen = self._seen.setdefault(key, set())
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            if value in seen:
                return True
            if len(seen) >= self.limit:
                return False
            seen.add(value)
            return True


class LoginGuard:
    """Wrong passwords: after `free` failures for one user name (or `free * 10` in all) within
    `window_s`, logins are refused for `lockout_s`, right password or not, so that guessing
    gets nowhere and a locked name tells nothing."""

    def __init__(self, check: Callable[[str, str], bool], *, free: int = 5, window_s: float = 60.0,
                 lockout_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.check, self.lockout_s, self.clock = check, float(lockout_s), clock
        self._per_user = Throttle(free, window_s, clock=clock)
        self._all = Throttle(free * 10, window_s, clock=clock)
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, user: str) -> bool:
        with self._lock:
            now = self.clock()
            until = max(self._locked.get(user, 0.0), self._locked.get("*", 0.0))
            return now < until

    def __call__(self, user: str, password: str) -> bool:
        user = str(user)[:256]
        if self.locked(user):
            return False
        if self.check(user, str(password)):
            return True
        with self._lock:
            now = self.clock()
            if not self._per_user.allow(user):
                self._locked[user] = now + self.lockout_s
            if not self._all.allow("*"):
                self._locked["*"] = now + self.lockout_s
            if len(self._locked) > 10_000:
                self._locked = {k: v for k, v in self._locked.items() if v > now}
        return False
