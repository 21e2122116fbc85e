"""What a request used and cost: the usage row, the ledger it is written to, prices."""
