"""`make demo`: the synthetic camera and the node on lion-nano, asked a scripted set of questions.

Not built yet: the node (issue "The ROS 2 node") and the shipped lion-nano weights (issue
"Training and evaluation") are still missing. Until they land this says so and fails, rather
than pretending.
"""
import sys


def main() -> int:
    print(
        "make demo is not available yet: it needs the ROS node (lion_ros.ros) and the shipped\n"
        "lion-nano model (lion_ros/assets/lion-nano), which have not been built yet.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
