"""The ground floor: atomic writes, file hashing and the config-section base class. Imports nothing of peftstd
but `peftstd.errors`."""
