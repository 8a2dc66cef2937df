import sys

from mrprior.cli import main

sys.exit(main())
