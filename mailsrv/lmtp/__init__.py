"""LMTP (RFC 2033): how an MTA hands mail to mailsrv for local delivery."""
