# Marks this folder as package data of domainmae (domainmae._builtin.*, see setup.py); not code.
