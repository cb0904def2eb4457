from lc.cli.main import main

main()
