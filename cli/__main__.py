from sp.cli.main import main

main()
