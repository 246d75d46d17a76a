"""``python -m domainmae`` (also what ``torchrun -m domainmae`` runs)."""
from .cli import main

raise SystemExit(main())
