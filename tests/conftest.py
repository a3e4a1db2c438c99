from tests.fix_services import amqp_url, database_url, db, settings
from tests.fix_stack import stack

__all__ = ["amqp_url", "database_url", "db", "settings", "stack"]
