"""Gadgetron entry points of mrprior.

``mrprior_gadget`` is a Gadgetron external Python node (``gadgetron.external``). Gadgetron puts
``share/gadgetron/python`` on ``PYTHONPATH`` and starts ``python -m gadgetron <port>
mrprior_gadget mrprior_gadget``; copy ``gadgets/mrprior_gadget.py`` there (the Docker image does)
or put this folder on ``PYTHONPATH``.
"""
