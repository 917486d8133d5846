"""The runtime type checker behind tests/test_shapes.py: beartype, with ``int`` accepted where ``float`` is annotated."""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
