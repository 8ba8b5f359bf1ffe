"""The Perform API (DESIGN §4): what other services ask the roomserver to do."""
