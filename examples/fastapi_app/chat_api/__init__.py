"""Example FastAPI application: an AI chat API that logs its events with eventlog-persist."""
