"""config.yaml to frozen dataclasses: the schema, load() and every problem by its key path."""
