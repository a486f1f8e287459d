"""The Secure Messaging portal: where external recipients read and answer held messages."""
