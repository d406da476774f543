"""What every part of vpsd that acts on a host shares, and nothing else: the one base error
of drivers, backup stores and external commands (``errors``), and the one way to run an
external program (``process``). It imports nothing of vpsd's."""
