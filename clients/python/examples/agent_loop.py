"""An agent loop over sandpool's gRPC API: create, files, exec, delete.

    SANDPOOL_TARGET=127.0.0.1:8080 SANDPOOL_API_KEY=... SANDPOOL_POOL=default python agent_loop.py
"""

import os

from sandpool_client import Client


def main() -> None:
    target = os.environ.get("SANDPOOL_TARGET", "127.0.0.1:8080")
    with Client(target, api_key=os.environ.get("SANDPOOL_API_KEY")) as client:
        sb = client.create(pool=os.environ.get("SANDPOOL_POOL", "default"), timeout=300)
        print("sandbox", sb.id)
        try:
            sb.write_file("/tmp/agent/step.sh", b'echo "step $1: $(( $1 * $1 ))" | tee -a /tmp/agent/log.txt\n')
            for step in (1, 2, 3):
                out = sb.exec(f"sh /tmp/agent/step.sh {step}")
                print(out.stdout.decode(), end="")
                assert out.exit_code == 0, out
            print(sb.read_file("/tmp/agent/log.txt").decode(), end="")
        finally:
            sb.delete()
            print("deleted")


if __name__ == "__main__":
    main()
