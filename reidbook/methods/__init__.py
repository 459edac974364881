"""Methods: one recipe per method, registered by name (``"baseline"``, ``"ianet"``, ``"qaconv"``, ...).

A recipe (:class:`~reidbook.methods.recipe.Recipe`) says everything the generic glue in
:mod:`reidbook.experiment` needs to train and judge a method: how to build its model and criterion, how
batches are drawn and fed, how it is evaluated, its default options, learning-rate multipliers and hooks,
the paper's changes to a profile, and the paper's numbers. Adding a paper is a model module in
``reidbook/models/``, a recipe module here, a chapter and a ``_toc.yml`` line.

    from reidbook import methods
    methods.names()              # every registered method
    methods.get("ianet").options # its default options
"""

from .registry import get, names, register

__all__ = ["get", "names", "register"]
