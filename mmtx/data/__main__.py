"""`python -m mmtx.data NAME [--data_dir DIR]`: builds one of mmtx's datasets."""
from mmtx.data import build

build.main()
