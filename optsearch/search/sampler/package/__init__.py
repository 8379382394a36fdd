"""OptunaHub's registry layout (``package/samplers/<name>/``) inside optsearch: each folder is a self-contained
OptunaHub package, loadable with ``optunahub.load_local_module(package=..., registry_root=<this folder>)``."""
