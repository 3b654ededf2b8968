"""A stand-in for Colab's ``google.colab`` in the Colab simulation test (tests/test_study_colab.py).

``MUFFIN_COLAB_ROOT`` plays ``/content``; ``MUFFIN_COLAB_SECRETS`` (JSON) holds the notebook's secrets.
"""
