"""Test helpers shipped with mailsrv, for code that builds on it.

As Twisted ships :mod:`twisted.internet.testing`, mailsrv ships what its
own tests use and other projects need too: :mod:`mailsrv.testing.storage`,
the storage contract as a suite of tests any backend can run.  Nothing here
depends on mailsrv's source checkout or its ``tests`` directory.
"""
