"""What tests share: builders of pipeline state, fault injection, a CLI project. Not tests."""
