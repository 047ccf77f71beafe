"""`python -m mmtx.data NAME [--data_dir DIR]`: builds one of mmtx's datasets;
`python -m mmtx.data ingest FORMAT SRC --name NAME`: writes one from your
files (mmtx/data/ingest.py)."""
import sys

if sys.argv[1:2] == ["ingest"]:
  from mmtx.data import ingest
  ingest.main(sys.argv[2:])
else:
  from mmtx.data import build
  build.main()
