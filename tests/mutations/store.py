"""Atomicity: core/files.atomic_path (results, exports, checkpoints) and the library store's
staged saves, transactions and crash recovery."""
from . import Mutation

F = "core/files.py"
S = "core/store.py"
TF = "tests/test_files.py"
FAILED_SAVE = "tests/test_store_db.py::test_failed_save_leaves_nothing"

MUTATIONS = [
    Mutation("files-failed-write-replaces-the-file", F,
             "        os.replace(tmp, path)\n    except BaseException:\n"
             "        Path(tmp).unlink(missing_ok=True)\n        raise",
             "    finally:\n        os.replace(tmp, path)",
             (f"{TF}::test_a_failed_write_keeps_the_old_file_and_leaves_nothing",),
             "a write that failed half-way still replaces the old file"),
    Mutation("files-failed-write-leaves-its-temp", F,
             "    except BaseException:\n        Path(tmp).unlink(missing_ok=True)\n        raise",
             "    except BaseException:\n        raise",
             (f"{TF}::test_a_failed_write_keeps_the_old_file_and_leaves_nothing",)),
    Mutation("files-temp-in-the-system-temp-folder", F,
             'prefix=f".{path.name}{TMP_INFIX}", dir=path.parent)', 'prefix=f".{path.name}{TMP_INFIX}")',
             (f"{TF}::test_a_write_appears_in_one_step",), "a rename across file systems is a copy, not atomic"),
    Mutation("store-failed-save-keeps-its-files", S,
             '                os.unlink(r["abs"])', "                pass", (FAILED_SAVE,)),
    Mutation("store-marked-committed-before-the-commit", S,
             '        self._hook("files_placed")\n        with self._tx() as c:',
             '        self._hook("files_placed")\n        staged.committed = True\n        with self._tx() as c:',
             (FAILED_SAVE,)),
    Mutation("store-failed-transaction-commits", S,
             'c.execute("ROLLBACK")', 'c.execute("COMMIT")', (FAILED_SAVE,), "half a save's rows kept"),
    Mutation("store-recovery-keeps-orphans", S,
             'elif rel.startswith("exports/") or rel not in refs:', 'elif rel.startswith("exports/"):',
             ("tests/test_store_db.py::test_recover_removes_temp_and_orphan_files_and_dangling_rows",),
             "files a killed save placed but never registered stay forever"),
]
