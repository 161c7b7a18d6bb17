#!/usr/bin/env bash
# Turn a fresh Debian 12 / Ubuntu machine with Python 3.10+ into a lion_ros development
# environment, with no ROS installed:
#   1. a venv (.venv) with the pinned library, test and ROS 2 wheels (real rclpy, Fast DDS):
#      Kilted by default, Jazzy with LION_ROS_DISTRO=jazzy (then in .venv-jazzy);
#   2. the ROS CMake files from the wheels made usable outside the manylinux build container;
#   3. lion_ros itself installed in place (editable), with its console scripts;
#   4. the vision_msgs stand-in, built only when no real vision_msgs is importable;
#   5. our msg/srv/action interfaces, built with colcon into the venv.
# Every step is skipped when its inputs have not changed, so a second run takes seconds.
# Env: LION_ROS_DISTRO (kilted, the default, or jazzy; not ROS_DISTRO, which a sourced ROS
# install sets to its own), LION_VENV (default <repo>/.venv for Kilted, <repo>/.venv-jazzy for
# Jazzy: one venv per distro, since one distro's pins over the other's leave packages behind),
# PYTHON (default python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
distro="${LION_ROS_DISTRO:-kilted}"
case "$distro" in
  kilted) ros_req="$repo/requirements/ros.txt"; suffix="" ;;
  jazzy) ros_req="$repo/requirements/ros-jazzy.txt"; suffix="-jazzy" ;;
  *) printf '[bootstrap] LION_ROS_DISTRO=%s: PyPI has ROS 2 wheels for kilted and jazzy only\n' \
       "$distro" >&2; exit 2 ;;
esac
venv="${LION_VENV:-$repo/.venv$suffix}"
python="${PYTHON:-python3}"
ws="$repo/.ros_ws$suffix"
log() { printf '[bootstrap] %s\n' "$*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_matches() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

start=$(date +%s)

# 1. venv and pinned wheels --------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
# Every requirements file except the other distro's ROS pins (requirements/ros*.txt).
req_files=()
for f in "$repo"/requirements/*.txt; do
  [[ "$(basename "$f")" == ros*.txt && "$f" != "$ros_req" ]] || req_files+=("$f")
done
req_hash=$(hash_of "${req_files[@]}")
if ! stamp_matches "$venv/.lion_requirements" "$req_hash"; then
  log "installing pinned requirements (first run: about a minute)"
  # pip is capped at the versions this project tested; torch==2.13.0 resolves to the CPU build
  # on the dev/CI machines. Never let a range pull a CUDA torch here.
  "$py" -m pip install -q --disable-pip-version-check $(printf -- '-r %s ' "${req_files[@]}")
  echo "$req_hash" > "$venv/.lion_requirements"
  rm -f "$venv/.lion_ros_cmake_fixed" "$ws/.stamp"
fi

# 2. The ROS wheels were built in a manylinux container and their exported CMake targets name
# that container's Python include dirs; point them at this venv's (see notes/ros2-from-pip.md).
if [[ ! -f "$venv/.lion_ros_cmake_fixed" ]]; then
  py_inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$("$py" -c 'import numpy; print(numpy.get_include())')
  mapfile -t cmake_files < <(grep -rl '/opt/python/cp' "$venv/share" --include='*.cmake' || true)
  if ((${#cmake_files[@]})); then
    log "pointing ${#cmake_files[@]} ROS CMake files at this venv's Python and NumPy"
    sed -i -E \
      -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_inc}#g" \
      -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#${py_inc}#g" \
      "${cmake_files[@]}"
  fi
  touch "$venv/.lion_ros_cmake_fixed"
fi

# 3. lion_ros in place: the repository is on sys.path (compat editable mode adds a plain path
# entry, which keeps lion_ros a namespace shared with the generated interfaces). Done before the
# interface build because pip would uninstall the lion_ros distribution that build registers.
src_hash=$(hash_of "$repo/pyproject.toml" "$repo/setup.py")
if ! stamp_matches "$venv/.lion_editable" "$src_hash"; then
  log "installing lion_ros in editable mode"
  "$py" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e "$repo" --config-settings editable_mode=compat
  echo "$src_hash" > "$venv/.lion_editable"
  # pip replaced the lion_ros distribution the interface build had installed: rebuild it.
  rm -f "$ws/.stamp"
fi

# 4 + 5. Interfaces ------------------------------------------------------------------------
# Built into the venv itself: the ROS wheels' bootstrapper already puts <venv>/lib on the
# library path and <venv>/lib/python*/site-packages is on sys.path, so no setup.bash is needed.
iface_inputs=("$repo"/msg/*.msg "$repo"/srv/*.srv "$repo"/action/*.action "$repo/CMakeLists.txt"
              "$repo/package.xml" "$repo/lion_ros/__init__.py" "$repo"/scripts/devenv/vision_msgs/msg/*.msg
              "$repo/scripts/devenv/vision_msgs/CMakeLists.txt")
iface_hash=$(echo "$req_hash $(hash_of "${iface_inputs[@]}")" | sha256sum | cut -d' ' -f1)
if ! stamp_matches "$ws/.stamp" "$iface_hash"; then
  mkdir -p "$ws"
  base_paths=("$repo")
  if "$py" -c 'import vision_msgs.msg' 2>/dev/null && [[ ! -f "$venv/.lion_vision_msgs_standin" ]]; then
    log "using the installed vision_msgs"
  else
    log "no vision_msgs installed: building the development stand-in (scripts/devenv/vision_msgs)"
    base_paths+=("$repo/scripts/devenv/vision_msgs")
    touch "$venv/.lion_vision_msgs_standin"
  fi
  log "building interfaces with colcon (about 30 s)"
  (
    cd "$ws"
    export CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv"
    export PATH="$venv/bin:$PATH"
    "$venv/bin/colcon" --log-base "$ws/log" build \
      --base-paths "${base_paths[@]}" \
      --build-base "$ws/build" --install-base "$venv" --merge-install \
      --event-handlers console_cohesion- summary- status- \
      --cmake-args -DLION_ROS_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$py" -DPYTHON_EXECUTABLE="$py" -Wno-dev \
      > "$ws/build.log" 2>&1
  ) || { log "interface build failed; see $ws/build.log"; tail -n 30 "$ws/build.log" >&2; exit 1; }
  echo "$iface_hash" > "$ws/.stamp"
fi

log "ready in $(( $(date +%s) - start )) s: $venv (ROS 2 $distro)"
