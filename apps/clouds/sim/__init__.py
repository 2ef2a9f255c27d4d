"""The simulated cloud: the embedded default's cloud (demo and most tests). Its state lives in the database, written
on its own connection (alias "sim", see router.py), and its time is a stored clock that tests advance."""
