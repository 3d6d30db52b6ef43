# Offline stand-in for the get-pip bootstrap that ansible-test downloads from a host outside the package
# registries: it creates pip with ensurepip, then installs the requested packages from the package index.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
