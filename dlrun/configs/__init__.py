# Composing the shipped configs imports this package (Hydra reads them from pkg://dlrun.configs): the resolvers
# they use are registered here, so that every composition, a test's or a notebook's too, resolves them.
from dlrun.config.table_task import register

register()
