import sys

from markup2im.cli import main

sys.exit(main())
