"""Run reporting, outside the library core: comparing finished runs from their workdirs."""
