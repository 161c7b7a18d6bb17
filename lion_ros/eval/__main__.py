import sys

from lion_ros.eval.cli import main

sys.exit(main())
