"""Cases the test suite and the device check (``bench.device_check``) both run, shipped with
the library so that neither imports the other: ``bijector_registry``, every bijector and whole
model in a few configurations. (The mock TFDS data of the tests is ``flows.data.testing``.)"""
