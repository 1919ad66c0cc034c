"""What the lab reads and tells: ss evidence, connection timelines, race stories,
the report's literal wait_celery loop and its wedge watch."""
