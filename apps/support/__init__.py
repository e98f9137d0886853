"""The support bot: a retrieval-augmented customer-support assistant behind a chat-widget API.

documents ─ chunking ─ kb (FAISS + BM25, hybrid)        the help centre, searchable
rules, intents, pii                                      what steers and protects a conversation
answer (plan → generate → finish)                        one message answered, or handed off
conversations (Redis)                                    sessions, feedback, handoffs, stats
service ─ routes (+ static/ widget and demo page)        the API a widget talks to
"""
