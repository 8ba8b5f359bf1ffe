"""The Perform API (DESIGN §4): the roomserver builds and signs events for local users and
submits them through the input stream, on `<prefix>.perform.<name>` of the micro service."""
