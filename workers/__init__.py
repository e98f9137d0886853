"""Celery workers: the app and its schedules in ``celery_app``, thin tasks in ``tasks``."""
