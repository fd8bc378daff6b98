"""The stream-processing adapters: Faust app and agents, Kafka topics, web, CLI, runtime."""
