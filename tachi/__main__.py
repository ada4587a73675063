from tachi.cli.main import main

main()
