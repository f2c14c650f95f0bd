"""A client project's tests, as its author writes them: only the plugin's fixtures.

Not collected by the mailsrv suite (trial looks for test modules in
packages; this directory is none): tests/test_pytest_plugin.py and
tests/test_testing.py run it with pytest, from a copy outside the checkout.
"""

import imaplib
import poplib
import smtplib

import pytest

MESSAGE = b"From: bob@example.org\r\nSubject: hello\r\n\r\nHi\r\n"


def test_imap_fixture(imap_server):
    imap_server.deliver(imap_server.user, MESSAGE, flags=["\\Flagged"])
    client = imaplib.IMAP4(imap_server.host, imap_server.imap_port)
    client.login(imap_server.user, imap_server.password)
    client.select("INBOX")
    typ, data = client.fetch("1", "(FLAGS BODY.PEEK[])")
    client.store("1", "+FLAGS", "(\\Seen)")
    client.logout()
    assert typ == "OK"
    assert data[0][1] == MESSAGE
    (message,) = imap_server.messages(imap_server.user)
    assert message.seen and "\\Flagged" in message.flags


def test_pop3_fixture_shares_the_mailbox(imap_server, pop3_server):
    assert imap_server is pop3_server
    pop3_server.deliver(pop3_server.user, MESSAGE)
    client = poplib.POP3(pop3_server.host, pop3_server.pop3_port)
    client.user(pop3_server.user)
    client.pass_(pop3_server.password)
    assert client.stat() == (1, len(MESSAGE))
    client.dele(1)
    client.quit()
    assert pop3_server.messages(pop3_server.user) == []


@pytest.mark.mailsrv(tls=True, users={"carol": "pw"})
def test_marker_options(mail_server):
    client = imaplib.IMAP4_SSL(
        mail_server.host, mail_server.imaps_port, ssl_context=mail_server.ssl_context()
    )
    assert client.login("carol", "pw")[0] == "OK"
    client.logout()
    with smtplib.LMTP(mail_server.host, mail_server.lmtp_port) as lmtp:
        lmtp.sendmail("bob@example.org", ["carol@example.org"], MESSAGE)
    assert len(mail_server.messages("carol")) == 1


def test_emulation(imap_server):
    imap_server.hide_capabilities("IDLE")
    client = imaplib.IMAP4(imap_server.host, imap_server.imap_port)
    assert "IDLE" not in client.capabilities
    client.logout()
