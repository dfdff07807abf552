"""``python -m streams`` is the ``crm-erp-sync`` CLI."""

from streams.cli import main

if __name__ == "__main__":
    main()
