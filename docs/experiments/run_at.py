"""run_at.py TREE (SCRIPT | -m MODULE) ARGS...: import normkit from TREE, not the editable install."""
import runpy, sys
tree = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") and "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3]] + sys.argv[4:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
