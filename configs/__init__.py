"""The shipped configs: installed as the package ``keras_fpn.configs`` (``pyproject.toml`` maps this folder),
read with ``importlib.resources`` by ``keras_fpn.config.shipped`` (``keras-fpn configs``)."""
