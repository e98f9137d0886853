"""The support bot: a retrieval-augmented customer-support assistant behind a chat-widget API.

documents ─ chunking ─ kb (FAISS + BM25, hybrid)        the help centre, searchable
rules, intents, pii                                      what steers and protects a conversation
answer (plan → generate → finish)                        one message answered, or handed off
conversations (Redis)                                    sessions, feedback, stats
handoffs (+ handoff_scripts) ─ inbox ─ live              a person takes over: state, events, SSE streams
analytics, webhook                                       daily deflection/CSAT; the team's own helpdesk
service ─ routes (+ static/ widget and demo page)        the API a widget talks to
inbox_routes (+ static/ inbox page)                      the agents' API and the /inbox page
"""
