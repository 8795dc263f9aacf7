"""The Spark Python workers' heap: frozen at a worker's first task, again only after new imports."""

import gc
import subprocess
import sys
import textwrap


def test_a_worker_freezes_its_heap_again_only_after_new_imports() -> None:
    # A fresh interpreter, as a worker forked by PySpark's daemon starts with only PySpark loaded.
    script = textwrap.dedent(
        """
        import gc
        import sys
        import types

        import pipelines.post.post_stage  # noqa: F401  (what unpickling the post function loads)
        from resources.worker_heap import freeze_imported_heap

        freeze_imported_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, frozen  # the loaded modules' objects are out of the collector's way

        freeze_imported_heap()  # nothing imported since: nothing more frozen
        assert gc.get_freeze_count() == frozen

        sys.modules["a_module_a_later_task_imports"] = types.ModuleType("a_module_a_later_task_imports")
        freeze_imported_heap()
        assert gc.get_freeze_count() > frozen
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert gc.get_freeze_count() == 0  # this test process is left alone
