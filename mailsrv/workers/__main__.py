"""``python -P -m mailsrv.workers``: a worker process (the parent starts it)."""

from mailsrv.workers.child import main

main()
