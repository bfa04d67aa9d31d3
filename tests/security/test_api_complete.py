"""Every endpoint works from a fresh API session with only its documented parameters (the
visitor token last where it takes one; inputs added later come after it, with defaults, so
that earlier clients keep working: AFTER_TOKEN), on a shared instance; what one visitor makes,
another neither lists nor uses; ratings of a published loop cannot be stuffed.

One module-wide flow makes a thing with each tab (tiny models, a few steps each); every call
opens a new client, as a script would, so no value filled in by a page load is relied on."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import AFTER_TOKEN, client, new_token, picture, raw_call, raw_error, upload

SA = ["a cat", "", 0, 2, 5.0, 64, 64, "", None, "", True, True, False, False, False, 0.0, 1.0, 1.0]


def call(app, api_name, *args):
    return client(app).predict(*args, api_name=api_name)


@pytest.fixture(scope="module")
def made(shared_app, tmp_path_factory):
    """Visitor A's things, one per tab, each made through the API."""
    from gradio_client import handle_file

    d = tmp_path_factory.mktemp("inputs")
    img = [handle_file(str(picture(d / f"p{i}.png", i))) for i in range(3)]
    tok = new_token(shared_app)
    out = {"token": tok, "img": img, "called": {"/visitor"}}

    def run(api, *args):
        out["called"].add(api)
        return call(shared_app, api, *args)

    out["run"] = run
    status, _, _, info = run("/personalize_train", [img[0]], "sks", "dog", "LoRA", 2, 1e-3, 4, False, 1.0, 1, 1, 1,
                             False, 0, 0, 0, False, 0, "", 0, tok)
    assert "Done" in status, status
    out["db"] = info["adapter_id"]
    status, *_, info = run("/styledrop_train", None, [img[1]], "a house", "watercolor painting", "", 2, 1e-3, 4,
                           False, 0, "a cat\na dog", 1, 2, 5.0, 0, tok)
    assert "Done: round 1" in status, status
    out["loop"], out["round"], out["sd"] = info["loop_id"], info["round_id"], info["adapter_id"]
    status, _, _, _, _, grid, _ = run("/styledrop_generate", str(out["loop"]), str(out["round"]), "a tree", 1, 2,
                                         5.0, 1, tok)
    assert "1 more candidates" in status, status
    out["candidates"] = [t["id"] for t in grid["tiles"]]
    assert len(out["candidates"]) == 3
    status, _, _, info = run("/blora_train", [img[2]], "", "", False, 2, 3e-3, 4, 0, 0, False, 0, False, tok)
    assert "Done" in status, status
    out["blora"] = info["adapters"][0]["adapter_id"]
    _, _, status, _ = run("/adain_train", [img[0], img[1]], [img[2]], "", "", "run1", 2, 1, 40, 32, 2, 2, True, tok)
    assert status.startswith("Finished at step 2"), status
    text = run("/adain_save_style", [img[1]], "ink wash", "a style", tok)   # a library style of A's
    out["style"] = re.search(r"\((s\d+):", text).group(1)
    return out


def test_every_endpoint_from_a_fresh_session(shared_app, made):
    from gradio_client import handle_file

    run, tok, img = made["run"], made["token"], made["img"]
    gallery, status, _, info = run("/style_aligned", *SA)
    assert len(gallery) == 1 and "Done" in status
    images, text = run("/adain", [img[0]], [img[1]], "", 1.0, False, False, None, 64, "built-in", tok)
    assert len(images) == 1 and text.startswith("Done")
    images, text = run("/adain", [img[0]], [img[1]], "", 1.0, False, False, None, 64, "run1", tok)  # a trained one
    assert len(images) == 1 and text.startswith("Done")
    # a stream event, which gradio_client cannot call: over plain HTTP, as a browser would
    made["called"].add("/adain_webcam")
    event, data = raw_call(shared_app, "/adain_webcam", [upload(shared_app, img[0]["path"]),
                                                          [upload(shared_app, img[1]["path"])], "", 1.0, 64, "run1",
                                                          tok])
    assert event == "complete" and data[0] and "FPS" in data[1], (event, str(data)[:300])
    gallery, status = run("/personalize_generate", "a {v} {c}", 0, 2, 5.0, str(made["db"]), 1.0, None, 1.0, None, 1.0,
                          tok)
    assert len(gallery) == 1 and "#%d" % made["db"] in status
    gallery, status = run("/personalize_generate", "a {v} {c}", 0, 2, 5.0, str(made["db"]), 1.0, None, 1.0, None, 1.0,
                          tok, None, 1.0, 2, 0.5)                          # best of 2
    assert len(gallery) == 2 and "Best of 2" in status and "seed " in gallery[0]["caption"]
    gallery, status, md = run("/personalize_drift", str(made["db"]), 1.0, 0, 2, 5.0, tok)
    assert len(gallery) == 8 and "similarity" in md
    lists = run("/personalize_library", None, None, None, tok)
    assert str(made["db"]) in [v for _, v in lists[0]["choices"]]
    exported, msg = run("/personalize_export", str(made["db"]), tok)
    assert Path(exported).suffix == ".safetensors" and "kohya" in msg
    assert "Imported" in run("/personalize_import", handle_file(exported), tok)
    status, *_ = run("/styledrop_clip", str(made["loop"]), str(made["round"]), "top_k", 1, 0.5, 0.5, False, tok)
    votes = run("/styledrop_rate", made["candidates"][0], 1, tok)
    assert votes["up"] >= 1
    counts, grid = run("/styledrop_order", str(made["round"]), 0.7, tok)      # best of N: the grid's order
    assert "grid order 0.7" in counts and sorted(t["id"] for t in grid["tiles"]) == sorted(made["candidates"])
    loop_dd, *_ = run("/styledrop_publish", str(made["loop"]), True, tok)
    gallery, status = run("/styledrop_combine", str(made["sd"]), 1.0, str(made["db"]), 1.0, "a sks dog", 0, 2, 5.0,
                          tok)
    assert len(gallery) == 1 and "Done" in status
    lib = run("/blora_library", None, None, tok)
    assert str(made["blora"]) in [v for _, v in lib[2]["choices"]]
    gallery, status, info = run("/blora_generate", "Custom prompts", str(made["blora"]), 1.0, str(made["blora"]), 1.0,
                                "A [c] in [s] style", 0, 2, 7.5, tok)
    assert len(gallery) == 1 and "Done" in status
    # "save as style" in four tabs; a saved style used by another tab
    sa_set, *_ = run("/style_aligned", *SA)
    shown = [{"image": handle_file(g["image"]), "caption": g.get("caption")} for g in sa_set]
    keys = {}
    for api, args in (("/styledrop_save_style", [str(made["round"]), "sd style"]),
                      ("/blora_save_style", [str(made["blora"]), "bl style"]),
                      ("/adain_save_style", [[img[1]], "ink wash", "ink"]),
                      ("/style_aligned_save_style", [shown, "a cat", "", None, "", "", "sa style"])):
        text = run(api, *args, tok)
        assert text.startswith("**Saved**"), (api, text)
        keys[api] = re.search(r"\((s\d+):", text).group(1)
    for key in keys.values():
        images, text = run("/adain", [img[0]], None, "", 1.0, False, False, None, 64, "built-in", tok, key)
        assert len(images) == 1 and text.startswith("Done"), text
    exported, msg = run("/blora_export", str(made["blora"]), "B-LoRA reference (diffusers)", tok)
    assert Path(exported).suffix == ".safetensors" and "reference" in msg
    assert "Imported" in run("/blora_import", handle_file(exported), "", "[v1]", tok)
    cands, png, status, svg, png2, info = run("/svg_generate", "a cat", "iconographic", "scratch", 4, 1, 2, 100, 0, 1,
                                              2, "")
    assert "Done" in status and Path(svg).read_text().lstrip().startswith(("<svg", "<?xml"))
    png, status, svg, png2, info = run("/vectorize", img[0], "vtracer", 4, 4, 48)
    assert "Done" in status and "files" not in info
    gallery, status, files, info = run("/svg_icon_set", "a cat\na dog", 4, 2, 48, 0, 1, 5.0)
    assert len(gallery) == 2 and len(files) == 4 and "folder" not in info
    health = run("/health")
    assert health["state"] == "ready" and health["model"] == "tiny" and "/" not in health["detail"]
    for stop in ("/style_aligned_stop", "/adain_stop", "/personalize_stop", "/styledrop_stop", "/blora_stop",
                 "/blora_train_stop", "/svg_stop", "/vectorize_stop", "/svg_icon_set_stop"):
        run(stop)  # nothing running: a no-op, never an error
    public = set(client(shared_app).view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert public <= made["called"], f"endpoints no test calls: {sorted(public - made['called'])}"


def test_another_visitor_neither_lists_nor_uses_them(shared_app, made):
    other = new_token(shared_app)
    lists = call(shared_app, "/personalize_library", None, None, None, other)
    assert lists[0]["choices"] == []
    assert call(shared_app, "/blora_library", None, None, other)[2]["choices"] == []
    for api, args in (("/personalize_generate", ["a {v} {c}", 0, 2, 5.0, str(made["db"]), 1.0, None, 1.0, None, 1.0]),
                      ("/personalize_export", [str(made["db"])]),
                      ("/personalize_drift", [str(made["db"]), 1.0, 0, 2, 5.0]),
                      ("/blora_generate", ["Custom prompts", str(made["blora"]), 1.0, None, 1.0, "a [c]", 0, 2, 7.5]),
                      ("/blora_export", [str(made["blora"]), "B-LoRA reference (diffusers)"]),
                      ("/styledrop_combine", [str(made["sd"]), 1.0, None, 1.0, "a dog", 0, 2, 5.0]),
                      ("/adain", [None, None, "", 1.0, False, False, None, 64, "run1"]),
                      ("/adain", [None, None, "", 1.0, False, False, None, 64, "built-in", other, made["style"]]),
                      ("/style_aligned_save_style", [None, "a cat", "", None, "", made["style"], "mine"])):
        after = AFTER_TOKEN.get(api, [])
        msg = raw_error(shared_app, api, args if other in args else [*args, other, *after])
        assert "not found" in msg or "Upload" in msg, (api, msg)
    msg = raw_error(shared_app, "/styledrop_order", [str(made["round"]), 0.5, other])
    assert "not found" in msg or "Only the loop's owner" in msg, msg
    c = upload(shared_app, made["img"][0]["path"])
    msg = raw_error(shared_app, "/adain", [[c], [c], "", 1.0, False, False, None, 64, "run1", other, None])
    assert "was not found among your decoders" in msg
    # the same visitor's token from a fresh session still owns everything
    assert str(made["db"]) in [v for _, v in call(shared_app, "/personalize_library", None, None, None,
                                                  made["token"])[0]["choices"]]


def test_ratings_of_a_published_loop_cannot_be_stuffed(shared_app, made):
    """Minted tokens are free to get, so votes from one address count for at most two of
    them on another's loop; the loop's owner rates without that limit."""
    call(shared_app, "/styledrop_publish", str(made["loop"]), True, made["token"])
    cid = made["candidates"][-1]
    counted, refused = 0, 0
    for _ in range(5):
        tok = new_token(shared_app)
        try:
            votes = call(shared_app, "/styledrop_rate", cid, -1, tok)
            counted += 1
        except Exception as exc:  # noqa: BLE001 - the refusal is what is checked
            assert "already count for 2 visitors" in str(exc)
            refused += 1
    assert (counted, refused) == (2, 3)
    votes = call(shared_app, "/styledrop_rate", cid, 1, made["token"])  # the owner
    assert votes["down"] == 2 and votes["mine"] == 1
