"""The Faust worker: Kafka in, contract check, learn, checkpoint. No model math here."""
