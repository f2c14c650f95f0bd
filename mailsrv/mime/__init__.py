"""The MIME model: what a message is made of, free of any protocol.

:mod:`~mailsrv.mime.structure` parses a message once into a tree of parts
located by byte offsets (and serialises it for the storage cache);
:mod:`~mailsrv.mime.fields` reads header blocks and structured MIME fields;
:mod:`~mailsrv.mime.addresses` parses RFC 5322 address lists;
:mod:`~mailsrv.mime.decoding` undoes transfer encodings, charsets and
encoded words.  How IMAP writes these (ENVELOPE, BODYSTRUCTURE, sections)
is :mod:`mailsrv.imap.render` and :mod:`mailsrv.imap.sections`.
"""
