"""Load a script of ``tools/`` as a module, so that tests call its ``main(argv)`` in-process."""
import importlib.util
import os

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools')


def load_tool(name):
    """``tools/<name>.py`` as a fresh module named ``tool_<name>``."""
    spec = importlib.util.spec_from_file_location('tool_' + name, os.path.join(TOOLS, name + '.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
