"""A separate writer process for the crash and race tests: ``writer_child.py URL RUN_ID N MODE [GO_FILE]``.

MODE "hang": once every row of the run is inserted (before the audit entry and the commit), print
"rows inserted" and sleep, so the parent can SIGKILL it mid-transaction.
MODE "race": wait until GO_FILE exists, then write and print the status.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from records import make_record

from certrisk.governance import GovernanceStore
from certrisk.governance.write import RunWriter


def main() -> None:
    url, run_id, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    record = make_record(run_id, n)
    store = GovernanceStore(url)
    if mode == "hang":

        def hang(self, *args, **kwargs):
            print("rows inserted", flush=True)
            time.sleep(600)

        RunWriter._append_audit = hang
    elif mode == "race":
        go = Path(sys.argv[5])
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.001)
    result = store.write_run(record)
    print(result.status, flush=True)


if __name__ == "__main__":
    main()
