from lightning_dyn.cli import main

main()
