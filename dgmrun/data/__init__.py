"""Datasets: readers of the on-disk formats (``readers``) and the LightningDataModules (``datamodule``).

Deliberately empty: the command line imports ``dgmrun.data.info`` at start-up, and importing this
package must not pull in torch or lightning.
"""
