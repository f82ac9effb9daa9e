"""A real SMTP server for Tether's tests (aiosmtpd): every message it accepts is written as a
JSON file (sender, recipients, raw content, whether STARTTLS was used) into a directory, where
the tests read it. With --cert/--key it requires STARTTLS."""

import argparse
import json
import os
import signal
import ssl
import time
import uuid

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content": envelope.content.decode("utf-8", "replace"),
            "tls": session.ssl is not None,
        }
        path = os.path.join(self.directory, f"{time.time_ns()}-{uuid.uuid4().hex}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    params = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        params = {"tls_context": context, "require_starttls": True}
    controller = Controller(Store(args.dir), hostname="127.0.0.1", port=args.port, **params)
    controller.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
